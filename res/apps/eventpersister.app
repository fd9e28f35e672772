# The event persister: every event of the system into the event store (issue 14).
# The store is the `event_store` container arg, else ion.config
# 'ion.services.dm.inventory.event_store' url, else ion-events.sqlite;
# `-a "apparg_eventpersister={'store': 'postgresql://...'}"` or other spawn args override.
{
    "type": "application",
    "name": "eventpersister",
    "description": "Stores every event of the system for history queries and replay",
    "version": "0.1.0",
    "mod": ("ion.core.pack.processapp",
            ["event_persister", "ion.services.dm.inventory.event_persister", "EventPersister"], {}),
    "registered": ["event_persister"],
}
