"""Container runtime for the local engine: the docker SDK with faice's labels and cleanup
(:mod:`faice.runtime.docker`) and per-run temp dirs that a killed run cannot leak
(:mod:`faice.runtime.tempdirs`). Imported lazily: the docker SDK loads only when a run starts."""
