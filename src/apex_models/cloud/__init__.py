"""The cloud memory service: team namespaces on PostgreSQL, access control, audit, sync (see serving/)."""
