"""``recp demo``: the whole chain on one machine (plant, agent, broker, service, store)."""
