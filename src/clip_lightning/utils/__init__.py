"""Small helpers shared by the library and the application: config resolvers and printing,
instantiating callback/logger lists, results as JSON and tables, what is wrong with a path.
Nothing here imports the model, data or cli layers."""
