"""Small helpers shared by the library and the application: config resolvers and printing,
instantiating callback/logger lists, results as JSON and tables, resume look-ups. Nothing here
imports the model, data or cli layers."""
