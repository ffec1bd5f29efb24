"""skuscale.serve"""
