"""The virtual plant: simulated Modbus meters with realistic load, losses and ground truth."""

from .config import Plant
from .engine import Engine, Unavailable
from .load import PlantSpec, load_plant

__all__ = ["Engine", "Plant", "PlantSpec", "Unavailable", "load_plant"]
