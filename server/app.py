"""The tutorial's Flask app, kept verbatim: the lab serves exactly this.

It sets `Connection: keep-alive` and `Keep-Alive: timeout=5` itself and
believes that keeps the connection open for 5 s. The lab shows what each
engine really does with those headers (Werkzeug sends them beside its own
`Connection: close`; gunicorn drops them and sends its own).
"""

from flask import Flask, make_response

app = Flask(__name__)


@app.route('/keep-alive')
def keep_alive():
    response = make_response("This connection is kept alive for 5 seconds!")
    response.headers['Connection'] = 'keep-alive'
    response.headers['Keep-Alive'] = 'timeout=5'
    return response
