"""faice ui."""
