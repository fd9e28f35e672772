# The event repository service: history queries and replay over RPC (issue 14).
# Its store is found as the persister's is (see eventpersister.app).
{
    "type": "application",
    "name": "eventrepository",
    "description": "Answers find_events and replay from the event store",
    "version": "0.1.0",
    "mod": ("ion.core.pack.processapp",
            ["event_repository", "ion.services.dm.inventory.event_repository", "EventRepositoryService"], {}),
    "registered": ["event_repository"],
}
