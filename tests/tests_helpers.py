"""Small helpers shared by tests."""
from pathlib import Path


def leftovers(folder: Path) -> list[str]:
    """Temporary files an interrupted export would leave (".name.XXXX.suffix")."""
    return sorted(p.name for p in Path(folder).rglob(".*") if p.is_file())
