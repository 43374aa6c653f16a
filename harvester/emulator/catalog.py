"""The class library the account draws on: disciplines, instructors, rides.

Names are made up; shapes follow PELOTON_API.md §6-§7.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, NamedTuple

ZERO_ID = "0" * 32
IMAGE_HOST = "https://s3.amazonaws.com/peloton-ride-images"


class Discipline(NamedTuple):
    slug: str
    display: str
    device_type: str
    platform: str
    metrics_type: str
    weight: float
    durations: tuple[int, ...]  # class lengths in minutes


DISCIPLINES: tuple[Discipline, ...] = (
    Discipline(
        "cycling", "Cycling", "home_bike_v1", "home_bike", "cycling", 40, (10, 20, 30, 45, 60)
    ),
    Discipline("strength", "Strength", "iPhone", "iOS_app", "cycling", 14, (5, 10, 20, 30)),
    Discipline("running", "Running", "home_tread_v1", "home_tread", "running", 9, (20, 30, 45)),
    Discipline("walking", "Walking", "home_tread_v1", "home_tread", "running", 4, (20, 30, 45)),
    Discipline("yoga", "Yoga", "iPad", "iOS_app", "cycling", 6, (10, 20, 30, 60)),
    Discipline("stretching", "Stretching", "home_bike_v1", "home_bike", "cycling", 7, (5, 10, 15)),
    Discipline("meditation", "Meditation", "iPhone", "iOS_app", "cycling", 4, (5, 10, 15)),
    Discipline("cardio", "Cardio", "iPad", "iOS_app", "cycling", 3, (10, 20, 30)),
    Discipline("circuit", "Circuit", "iPad", "iOS_app", "cycling", 2, (20, 30)),
    Discipline(
        "bike_bootcamp", "Bike Bootcamp", "home_bike_v1", "home_bike", "cycling", 3, (30, 45)
    ),
    Discipline("caesar", "Rowing", "home_row_v1", "home_row", "caesar", 3, (15, 20, 30)),
    Discipline("caesar_bootcamp", "Row Bootcamp", "home_row_v1", "home_row", "caesar", 1, (30, 45)),
)
BY_SLUG = {d.slug: d for d in DISCIPLINES}
PEDALING_DISCIPLINES = frozenset(
    {"cycling", "bike_bootcamp", "running", "walking", "caesar", "caesar_bootcamp"}
)
# An enum value no strict parser has seen: the API has added disciplines before.
UNKNOWN_DISCIPLINE = Discipline(
    "pilates_v2", "Pilates", "home_tablet_v3", "home_tablet", "pilates_v2", 0, (20, 30)
)
BY_SLUG[UNKNOWN_DISCIPLINE.slug] = UNKNOWN_DISCIPLINE

CLASS_TYPES = {
    "cycling": ("Climb", "Intervals", "Pop", "Tabata", "Low Impact", "Power Zone"),
    "running": ("Fun Run", "Intervals", "Tempo", "Endurance"),
    "walking": ("Power Walk", "Hiking", "Walk + Run"),
    "strength": ("Full Body", "Upper Body", "Core", "Glutes & Legs", "Arms"),
    "yoga": ("Flow", "Slow Flow", "Power", "Restorative"),
    "stretching": ("Full Body Stretch", "Lower Body Stretch"),
    "meditation": ("Sleep", "Mindfulness", "Breath"),
    "cardio": ("HIIT", "Dance Cardio", "Boxing"),
    "circuit": ("Circuit",),
    "bike_bootcamp": ("Bootcamp",),
    "caesar": ("Row Intervals", "Row Endurance", "Row Sprints"),
    "caesar_bootcamp": ("Row Bootcamp",),
    "pilates_v2": ("Mat Pilates",),
}
FIRST_NAMES = (
    "Ada",
    "Bruno",
    "Chiara",
    "Dmitri",
    "Elif",
    "Farah",
    "Gwen",
    "Hiro",
    "Inès",
    "Jonas",
    "Kemal",
    "Lena",
    "Mateo",
    "Nia",
    "Oskar",
    "Priya",
    "Quinn",
    "Rafael",
    "Sanna",
    "Tobi",
)
LAST_NAMES = (
    "Adeyemi",
    "Björk",
    "Castillo",
    "Dubois",
    "Eriksen",
    "Fontaine",
    "García",
    "Hale",
    "Ito",
    "Jansen",
    "Kowalski",
    "Lindqvist",
    "Müller",
    "Novak",
    "Okafor",
    "Park",
)
# Class titles in other languages: the list and lake must keep them intact.
FOREIGN_TITLES = (
    "Fahrt mit Grüßen",
    "Yoga für Anfänger",
    "Été à vélo",
    "東京ライド",
    "Día de Piernas",
)


@dataclass(slots=True)
class Instructor:
    id: str
    user_id: str
    first_name: str
    last_name: str
    disciplines: tuple[str, ...]
    order: int

    @property
    def name(self) -> str:
        return f"{self.first_name} {self.last_name}"


@dataclass(slots=True)
class Ride:
    id: str
    discipline: str
    instructor: Instructor
    duration: int | None  # None for distance classes
    distance: float | None
    air_time: int
    title: str
    class_type: int  # index into CLASS_TYPES[discipline]
    gym: bool = False  # Peloton Gym: UUID id, no /details


def hex_id(rng: random.Random) -> str:
    return f"{rng.getrandbits(128):032x}"


def uuid_id(rng: random.Random) -> str:
    h = hex_id(rng)
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-a{h[17:20]}-{h[20:]}"


def class_type_id(discipline: str, index: int) -> str:
    """A stable id per class type, so every ride of that type shares it."""
    seeded = random.Random(f"{discipline}/{index}")
    return hex_id(seeded)


def make_instructors(rng: random.Random, count: int = 60) -> list[Instructor]:
    slugs = [d.slug for d in DISCIPLINES]
    out: list[Instructor] = []
    for i in range(count):
        first = FIRST_NAMES[i % len(FIRST_NAMES)]
        last = LAST_NAMES[(i * 7 + i // len(FIRST_NAMES)) % len(LAST_NAMES)]
        main = slugs[i % len(slugs)]
        extra = rng.choice(slugs)
        disciplines = (main,) if extra == main else (main, extra)
        out.append(Instructor(hex_id(rng), hex_id(rng), first, last, disciplines, i))
    return out


def instructor_json(ins: Instructor) -> dict[str, Any]:
    slug = ins.name.lower().replace(" ", "-")
    return {
        "id": ins.id,
        "bio": f"{ins.first_name} teaches {', '.join(ins.disciplines)} with heart and humour.",
        "short_bio": f"{ins.first_name} brings the energy.",
        "coach_type": "peloton_coach",
        "is_filterable": True,
        "is_instructor_group": False,
        "is_visible": True,
        "list_order": ins.order,
        "featured_profile": ins.order < 12,
        "film_link": "",
        "facebook_fan_page": "",
        "music_bio": "",
        "spotify_playlist_uri": "",
        "background": "",
        "ordered_q_and_as": [["Favourite song?", "Anything with a drop."]],
        "instagram_profile": "",
        "strava_profile": "",
        "twitter_profile": "",
        "quote": "Effort is the point.",
        "username": slug.replace("-", ""),
        "name": ins.name,
        "first_name": ins.first_name,
        "last_name": ins.last_name,
        "user_id": ins.user_id,
        "life_style_image_url": f"{IMAGE_HOST}/{slug}-life.png",
        "bike_instructor_list_display_image_url": None,
        "web_instructor_list_display_image_url": f"{IMAGE_HOST}/{slug}-web.png",
        "ios_instructor_list_display_image_url": f"{IMAGE_HOST}/{slug}-ios.png",
        "about_image_url": f"{IMAGE_HOST}/{slug}-about.png",
        "image_url": f"{IMAGE_HOST}/{slug}.png",
        "jumbotron_url": None,
        "jumbotron_url_dark": None,
        "jumbotron_url_ios": None,
        "web_instructor_list_gif_image_url": None,
        "instructor_hero_image_url": f"{IMAGE_HOST}/{slug}-hero.png",
        "fitness_disciplines": list(ins.disciplines),
    }


def ride_title(discipline: str, minutes: int | None, class_type: str, rng: random.Random) -> str:
    if rng.random() < 0.03:
        return rng.choice(FOREIGN_TITLES)
    if minutes is None:
        return f"5k {class_type} Run" if discipline == "running" else f"2000m {class_type}"
    return f"{minutes} min {class_type} {BY_SLUG[discipline].display}".replace("Cycling", "Ride")


def ride_json(ride: Ride, embed_instructor: bool) -> dict[str, Any]:
    """The full class object, as /api/ride/{id} and ride joins return it."""
    rng = random.Random(ride.id)
    d = BY_SLUG[ride.discipline]
    length = (ride.duration or 1800) + rng.randint(40, 140)
    out: dict[str, Any] = {
        "id": ride.id,
        "title": ride.title,
        "description": f"A {ride.title.lower()} with {ride.instructor.first_name}.",
        "instructor_id": ride.instructor.id,
        "fitness_discipline": ride.discipline,
        "fitness_discipline_display_name": d.display,
        "duration": ride.duration,
        "length": length,
        "original_air_time": ride.air_time,
        "scheduled_start_time": ride.air_time,
        "difficulty_estimate": round(rng.uniform(4.0, 9.0), 4),
        "difficulty_rating_avg": round(rng.uniform(4.0, 9.0), 4),
        "difficulty_rating_count": rng.randint(100, 90000),
        "difficulty_level": None,
        "overall_estimate": round(rng.uniform(0.9, 1.0), 4),
        "overall_rating_avg": round(rng.uniform(0.9, 1.0), 4),
        "overall_rating_count": rng.randint(100, 90000),
        "total_workouts": rng.randint(1000, 400000),
        "total_in_progress_workouts": 0,
        "class_type_ids": [class_type_id(ride.discipline, ride.class_type)],
        "equipment_tags": [],
        "equipment_ids": [],
        "metrics": ["heart_rate", "calories"],
        "is_archived": True,
        "is_closed_caption_shown": True,
        "is_explicit": rng.random() < 0.2,
        "is_live_in_studio_only": False,
        "has_closed_captions": True,
        "has_pedaling_metrics": ride.discipline in PEDALING_DISCIPLINES,
        "availability": {"is_available": True, "reason": None},
        "language": "english",
        "origin_locale": "en-US",
        "content_format": "audio" if ride.discipline in ("running", "walking") else "video",
        "content_provider": "peloton",
        "location": "nyc",
        "image_url": f"{IMAGE_HOST}/{ride.id}.png",
        "home_peloton_id": None,
        "series_id": ride.id[::-1],
        "sold_out": False,
        "vod_stream_id": f"{ride.id}-vod",
        "is_fixed_distance": ride.duration is None,
        "distance": ride.distance,
        "distance_unit": "metric" if ride.distance is not None else None,
        "distance_display_value": f"{ride.distance} km" if ride.distance is not None else None,
        "pedaling_start_offset": 60,
        "pedaling_end_offset": length - 30,
        "pedaling_duration": length - 90,
        "join_tokens": {"on_demand": f"jt_{ride.id[:12]}"},
    }
    if embed_instructor:
        out["instructor"] = instructor_json(ride.instructor)
    return out


def metadata_mappings(instructors: list[Instructor]) -> dict[str, Any]:
    """``/api/ride/metadata_mappings``: decodes class_type_ids, disciplines, device types."""
    return {
        "instructors": [
            {
                "id": i.id,
                "name": i.name,
                "first_name": i.first_name,
                "last_name": i.last_name,
                "list_order": i.order,
                "is_visible": True,
                "fitness_disciplines": list(i.disciplines),
                "image_url": f"{IMAGE_HOST}/{i.name.lower().replace(' ', '-')}.png",
            }
            for i in instructors
        ],
        "class_types": [
            {
                "id": class_type_id(disc, n),
                "name": name,
                "display_name": name,
                "fitness_discipline": disc,
                "is_active": True,
                "is_visible": True,
                "list_order": n,
            }
            for disc, names in CLASS_TYPES.items()
            if disc in BY_SLUG
            for n, name in enumerate(names)
        ],
        "fitness_disciplines": [{"id": d.slug, "name": d.display} for d in DISCIPLINES],
        "device_type_display_names": [
            {"device_type": dt, "display_name": name}
            for dt, name in (
                ("home_bike_v1", "Peloton Bike"),
                ("home_bike_plus", "Peloton Bike+"),
                ("home_tread_v1", "Peloton Tread"),
                ("home_row_v1", "Peloton Row"),
                ("home_tablet", "Peloton Guide"),
                ("iPhone", "iPhone"),
                ("iPad", "iPad"),
                ("web", "Web"),
            )
        ],
        "content_focus_labels": [
            {"slug": s, "display_name": s.replace("_", " ").title()}
            for s in ("endurance", "intervals", "recovery", "strength")
        ],
        "difficulty_levels": [
            {"slug": s, "display_name": s.title(), "list_order": n}
            for n, s in enumerate(("beginner", "intermediate", "advanced"))
        ],
        "equipment_tags": [
            {"id": class_type_id("equipment", n), "name": name, "slug": name.lower().replace(" ", "_")}
            for n, name in enumerate(("Light Weights", "Medium Weights", "Heavy Weights", "Yoga Mat"))
        ],
        "locales": [{"locale_code": "en-US", "display_name": "English"},
                    {"locale_code": "de-DE", "display_name": "Deutsch"}],
        "class_type_ids_to_filter": [],
    }
