import sys
from pathlib import Path

# The program's modules import as `components.*`, as they do when the Pulumi CLI runs __main__.py.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
