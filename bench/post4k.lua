-- bench/run's POST mode: a fixed 4 KiB body on every request to bench/echo.py. A static
-- request defined here keeps wrk on its fast path (no per-request Lua).
wrk.method = "POST"
wrk.body = string.rep("x", 4096)
wrk.headers["Content-Type"] = "application/octet-stream"
