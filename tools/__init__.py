"""factflow.tools"""
