"""skuscale.embed"""
