"""The async source of the router's behaviours that have a sync twin (generated into ``_sync/``)."""
