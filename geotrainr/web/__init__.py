"""The page ``geotrainr serve`` answers at ``/``: plain HTML, CSS and JavaScript, no external resources."""
