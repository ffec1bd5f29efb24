"""skuscale.data"""
