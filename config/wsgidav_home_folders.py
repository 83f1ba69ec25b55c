"""A wsgidav file provider that gives every user a folder of their own.

wsgidav's own FilesystemProvider serves one folder to every user: behind portcullis that would
let one account read and delete another's files. This provider maps each request to
ROOT/<user>/, the user being the one the gateway names in its trusted header (wsgidav puts it
in environ["wsgidav.auth.user_name"]), creates that folder on first use, and refuses any path
that resolves outside it.

Use it in wsgidav's configuration (with this file's folder on PYTHONPATH):

    provider_mapping:
      "/":
        class: wsgidav_home_folders.HomeFolders
        args: ["/srv/dav"]
"""

import os

from wsgidav.dav_error import HTTP_FORBIDDEN, DAVError
from wsgidav.fs_dav_provider import FilesystemProvider


class HomeFolders(FilesystemProvider):
    def _loc_to_file_path(self, path, environ=None):
        user = (environ or {}).get("wsgidav.auth.user_name") or ""
        # A user name is one path segment; anything else is refused, never interpreted.
        if not user or user in (".", "..") or any(c in user for c in "/\\\0"):
            raise DAVError(HTTP_FORBIDDEN, "No user folder")
        home = os.path.join(self.root_folder_path, user)
        os.makedirs(home, mode=0o700, exist_ok=True)
        file_path = super()._loc_to_file_path("/" + user + "/" + path.lstrip("/"), environ)
        real_home = os.path.realpath(home)
        real = os.path.realpath(file_path)
        if real != real_home and not real.startswith(real_home + os.sep):
            raise DAVError(HTTP_FORBIDDEN, "Outside the user's folder")
        return file_path
