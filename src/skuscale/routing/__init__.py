"""skuscale.routing"""
