import time
from tests.apps.basic import app as basic
async def app(scope, receive, send):
    if scope["type"] == "http" and scope["path"] == "/block":
        time.sleep(30)
    return await basic(scope, receive, send)
