"""Edge mode: imgproxy as a cache in front of a central image API (Glance or another imgproxy).

The edge keeps no image records: every Image API request goes upstream with the caller's
credentials (:mod:`.proxy`), except image data reads, which are authorized upstream
(:mod:`.authz`) and served from the local chunk cache, filled from the upstream and
verified against its digests (:mod:`.data`, :mod:`.verify`), and the edge's own
``/v2/cache`` API (:mod:`.cache_routes`). Edges chain: an edge's upstream may be an edge.
"""

from .app import create_edge_app

__all__ = ["create_edge_app"]
