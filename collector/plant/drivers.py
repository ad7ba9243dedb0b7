"""What drives every meter of a plant at one moment: the schedule, production and weather."""

from __future__ import annotations

import datetime as dt
import math
import random
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from .config import WEEKDAYS, Plant, When, _clock_range

DAY_S = 86400.0
YEAR_DAYS = 365.25


@dataclass(frozen=True)
class Drivers:
    """Plant-wide conditions during one simulation step."""

    t: float  # step start, seconds since the epoch (UTC)
    running: bool  # production line running
    workday: bool  # a working day in the plant's calendar
    minute_of_day: float  # local wall-clock minutes after midnight
    production_rate: float  # units/h
    temperature_c: float  # outdoor
    humidity_pct: float  # outdoor

    def matches(self, when: When) -> bool:
        """Whether a load or loss that is active ``when`` is active now."""
        if when is When.ALWAYS:
            return True
        if when is When.PRODUCTION:
            return self.running
        if when is When.NON_PRODUCTION:
            return not self.running
        return self.workday


class Calendar:
    """Working days, shifts, breaks and holidays in the plant's local time."""

    def __init__(self, plant: Plant):
        s = plant.schedule
        self.zone = ZoneInfo(plant.timezone)
        self.workdays = {WEEKDAYS.index(d) for d in s.workdays}
        self.holidays = set(s.holidays)
        self.shifts = [_clock_range(x) for x in s.shifts]
        self.breaks = [_clock_range(x) for x in s.breaks]

    def is_workday(self, day: dt.date) -> bool:
        return day.weekday() in self.workdays and day not in self.holidays

    @staticmethod
    def _within(minute: float, ranges: list[tuple[int, int]]) -> bool:
        return any(a <= minute < b for a, b in ranges)

    def local(self, t: float) -> dt.datetime:
        return dt.datetime.fromtimestamp(t, self.zone)

    def state(self, t: float) -> tuple[bool, bool, float]:
        """(running, workday, local minute of day) at epoch second ``t``."""
        now = self.local(t)
        minute = now.hour * 60 + now.minute + now.second / 60.0
        today = now.date()
        workday = self.is_workday(today)
        running = workday and self._within(minute, self.shifts)
        if not running and self.is_workday(today - dt.timedelta(days=1)):
            running = self._within(minute + 1440, self.shifts)  # a night shift from yesterday
        if running and self._within(minute, self.breaks):
            running = False
        return running, workday, minute


class DriverModel:
    """Steps the plant-wide drivers; seeded, so the same plant gives the same series."""

    def __init__(self, plant: Plant, step_s: float):
        self.calendar = Calendar(plant)
        self.weather = plant.weather
        self.production = plant.production
        self.step_s = step_s
        self._rng_weather = random.Random(f"{plant.seed}/weather")
        self._rng_prod = random.Random(f"{plant.seed}/production")
        # slow weather swings (about three days) and production wobble (about 20 minutes)
        self._phi_w = math.exp(-step_s / (3 * DAY_S))
        self._phi_p = math.exp(-step_s / 1200.0)
        self._w = self._rng_weather.gauss(0.0, 1.0)
        self._p = 0.0

    def _temperature(self, t: float, minute: float) -> float:
        w = self.weather
        day_of_year = (t / DAY_S) % YEAR_DAYS  # epoch starts on 1 January
        seasonal = -w.annual_amplitude_c * math.cos(2 * math.pi * (day_of_year - 15) / YEAR_DAYS)
        daily = w.daily_amplitude_c * math.cos(2 * math.pi * (minute / 60.0 - 15.0) / 24.0)
        return w.mean_c + seasonal + daily + w.noise_c * self._w

    def next(self, t: float) -> Drivers:
        """Drivers for the step starting at ``t``; call once per step, in order."""
        self._w = self._phi_w * self._w + math.sqrt(1 - self._phi_w**2) * self._rng_weather.gauss(
            0.0, 1.0
        )
        self._p = self._phi_p * self._p + math.sqrt(1 - self._phi_p**2) * self._rng_prod.gauss(
            0.0, 1.0
        )
        running, workday, minute = self.calendar.state(t)
        rate = 0.0
        if running:
            rate = max(0.0, self.production.rate_units_h * (1 + self.production.noise * self._p))
        temp = self._temperature(t, minute)
        humidity = min(100.0, max(15.0, 70.0 - 2.0 * (temp - self.weather.mean_c)))
        return Drivers(t, running, workday, minute, rate, temp, humidity)
