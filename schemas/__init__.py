"""JSON Schemas shipped with faice (RED 8/9, faice extensions, connector access, records)."""
