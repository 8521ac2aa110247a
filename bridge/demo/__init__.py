"""The live demo: an embedded PostgreSQL with a simulated bike pipeline, and the bridge."""
