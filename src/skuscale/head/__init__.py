"""skuscale.head"""
