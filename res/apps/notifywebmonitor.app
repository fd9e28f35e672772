# R1's notification web monitor: a web page of live events on http://127.0.0.1:9999 (needs eventmonitor).
{
    "type": "application",
    "name": "notify_web_monitor",
    "description": "Web monitor of events: R1's /data and /ctl endpoints, a live /stream and page",
    "version": "0.1.0",
    "mod": ("ion.core.pack.processapp", ["notify_web_monitor_1", "ion.services.dm.distribution.notify_web_monitor", "NotificationWebMonitorService"], {}),
    "registered": ["notify_web_monitor"],
}
