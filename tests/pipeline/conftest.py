import sys
from pathlib import Path

# fake_runtime and the engine tests' RED builder are plain modules next to the tests
sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent / "engine"))
