# R1's event monitor service: sessions subscribe to events and poll for them (getdata).
{
    "type": "application",
    "name": "EventMonitor",
    "description": "Event monitor service: subscribe, unsubscribe, getdata per session",
    "version": "0.1.0",
    "mod": ("ion.core.pack.processapp", ["eventmonitor", "ion.services.dm.distribution.eventmonitor", "EventMonitorService"], {}),
    "registered": ["event_monitor"],
}
