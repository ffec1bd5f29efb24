"""skuscale.ood"""
