"""Placeholder: routes for this part of the API land here."""

from starlette.routing import BaseRoute

routes: list[BaseRoute] = []
