-- serf-handlers: serve the handler's own metrics file (the config's `metrics: PATH`,
-- Prometheus text format) from HAProxy, read anew on every request: no daemon, no copy.
--
-- The built-in template loads it (`lua-load`) when vars `stats_bind`, `stats_lua` and
-- `stats_metrics_file` are set; the stats frontend puts the file's path in the variable
-- txn.serf_handlers_metrics and sends GET /metrics/serf-handlers here.
-- The file is small (a few kB) and local, so reading it in HAProxy's event loop is cheap.
core.register_service("serf_handlers_metrics", "http", function(applet)
    local path = applet:get_var("txn.serf_handlers_metrics")
    local file = path and io.open(path, "rb")
    local body, status = "", 200
    if file then
        body = file:read("a") or ""
        file:close()
    else
        -- No file: the handler has not run yet, or `metrics:` points elsewhere. Say so
        -- (Prometheus marks the scrape failed) rather than serve an empty page.
        body = "metrics file not found: " .. tostring(path) .. "\n"
        status = 503
    end
    applet:set_status(status)
    applet:add_header("content-type", status == 200 and "text/plain; version=0.0.4; charset=utf-8" or "text/plain")
    applet:add_header("content-length", string.len(body))
    applet:add_header("cache-control", "no-store")
    applet:start_response()
    applet:send(body)
end)
