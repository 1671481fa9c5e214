from geotrainr.cli import entry

entry()
