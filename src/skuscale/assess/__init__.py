"""skuscale.assess"""
