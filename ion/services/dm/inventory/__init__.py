"""Event history: the store, the persister that fills it and the repository service that answers queries."""
