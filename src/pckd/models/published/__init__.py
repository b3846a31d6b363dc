"""The published teachers pckd knows by name, and the local cache that ``zoo:NAME`` checkpoint paths resolve
into (fetching them is ``pckd.teachers``'s job)."""

from pckd.models.published.cache import is_zoo, resolve, teacher_file
from pckd.models.published.registry import TEACHERS, PublishedTeacher

__all__ = ["TEACHERS", "PublishedTeacher", "is_zoo", "resolve", "teacher_file"]
