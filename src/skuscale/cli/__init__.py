"""skuscale.cli"""
