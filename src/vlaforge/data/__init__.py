"""Datasets: the LeRobot v3 format (read and write), statistics, and readers of other formats."""

from vlaforge.registry import Registry

FORMATS: Registry[type] = Registry("formats", lazy={"lerobot": "vlaforge.data.lerobot"})
