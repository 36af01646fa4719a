"""`vidx serve`: the web app over the index (search, people, videos, jobs) and its JSON API."""
