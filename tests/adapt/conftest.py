import pytest

from clipforge.adapt.shapes_task import write_novel_classes

CLASSES = [("hexagon", "red"), ("circle", "pink"), ("diamond", "grey")]


@pytest.fixture
def novel_folders(tmp_path):
    """train/ (8 per class) and test/ (4 per class) image folders of three novel classes."""
    return write_novel_classes(tmp_path / "novel", 16, 8, 4, classes=CLASSES)
