"""skuscale.monitor"""
