"""The image registry: image records, their secondary indexes and members, in LMDB.

Layout (named databases of the service's one environment):

- ``images``: image id -> record JSON. Public Glance fields at top level; internal fields
  start with ``_`` (``_locations``, ``_created_us``) and are never shown to clients.
- ``views``: image id -> the image's view as a client sees it, rendered
  (:func:`imgproxy.views.image_json`) behind a small header holding the visibility and owner
  that decide who may see it. Show and list send these bytes without parsing the record.
- ``idx``: index keys -> ``b""``, the streams of :mod:`imgproxy.streams`: each holds exactly
  the images with its terms (owner, visibility, status, name, tag, membership, and pairs of
  them), newest first, and the name-order streams of listings sorted by name, so a listing
  reads only what it returns (walked by :class:`imgproxy.index.Index`).
- ``members``: ``<image id>\\0<member>`` -> member JSON.
- ``deleted``: image id -> small tombstone, so a deleted id is never reused (as Glance).
- ``delete_journal``: image id -> ``{"locations": [{"url", "store"}, ...], "not_before": us}``
  of a deleted image whose store data and manifest may still exist; written in the
  transaction that deletes the record, removed by the reaper once both are gone (so a crash
  in between loses nothing). With delayed delete the record stays meanwhile, status
  ``pending_delete``, shown to admins only and in no index (Glance's deleted rows), and the
  reaper removes it with the journal entry, not before ``not_before``. A copy deleted from
  one store of a live image (:meth:`Registry.delete_copy`) has an entry of its own, under
  ``<image id>/<store>`` (:func:`journal_key`), written in the transaction that drops the
  location.
- ``registry_meta``: ``layout`` -> the version of the views and index layout; an older
  environment is rebuilt by :meth:`Registry.upgrade` before the service answers.

Every write updates the record, its view and its index entries in ONE write transaction
(a member change touches only that membership's index entries: the view does not show it). All
methods are synchronous and short. Write transactions begin through ``write_txn``, which
refuses the event loop's thread: async code calls the write methods through the
process's ``DbWriter``; reads may run anywhere.

:class:`Registry` is one class assembled from one module per responsibility, each part a
subclass of the record store that keeps a record, its view and its index entries in step:
``store`` (:class:`~.store.RecordStore`: the databases, the low-level reads and writes, who
may see and change a record, the layout upgrade), ``members``, ``uploads`` (the upload
lifecycle), ``passes`` (images registered by location and their owed passes), ``deletes``
(deletes and the delete journal) and ``records`` (the assembly: create, get, update, status).
"""

from ..streams import stream_prefix
from .deletes import journal_key, split_journal_key
from .members import MEMBER_STATUSES
from .records import Registry
from .store import LAYOUT, format_time, utc_now

__all__ = ["Registry", "utc_now", "format_time", "stream_prefix", "MEMBER_STATUSES", "LAYOUT", "journal_key",
           "split_journal_key"]
