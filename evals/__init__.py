"""factflow.evals"""
