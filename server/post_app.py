"""The tutorial's app, its view unchanged, also taking POST.

For scenarios about non-idempotent requests (a proxy's 502, a POST that
raced the FIN): the tutorial's route answers GET only, and a 405 would hide
what the lab wants to show.
"""

from flask import Flask

from server.app import keep_alive

app = Flask(__name__)
app.add_url_rule('/keep-alive', view_func=keep_alive, methods=['GET', 'POST'])
