"""Apps that cannot boot."""


async def lifespan_fails(scope, receive, send):
    if scope["type"] == "lifespan":
        await receive()
        await send({"type": "lifespan.startup.failed", "message": "database unreachable: db:5432"})
        return


async def lifespan_raises(scope, receive, send):
    if scope["type"] == "lifespan":
        raise RuntimeError("lifespan exploded")


def not_async():
    return None


def make_app():
    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"7")]})
        await send({"type": "http.response.body", "body": b"factory"})

    return app


class Nested:
    class Inner:
        @staticmethod
        async def app(scope, receive, send):
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-length", b"6")]})
            await send({"type": "http.response.body", "body": b"nested"})
