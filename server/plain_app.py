"""The tutorial's app without its hop-by-hop headers, for engines that enforce PEP 3333.

waitress refuses an application that sets `Connection` or `Keep-Alive`
(they belong to the server, not the app) and answers 500: the lab shows
that with server/app.py, and uses this one to show waitress's keep-alive.
"""

from flask import Flask

app = Flask(__name__)


@app.route('/keep-alive')
def keep_alive():
    return "This connection is kept alive for 5 seconds!"
