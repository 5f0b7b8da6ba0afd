"""Pure routing decisions: peer scores and selection."""
