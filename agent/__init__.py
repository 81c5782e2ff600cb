"""factflow.agent"""
