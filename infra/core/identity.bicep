// The gate's identity. The Function app runs as this user-assigned identity and every grant the
// app needs names it (not the app's own system identity), so the grants outlive a re-created app
// and can be made before the app exists.

@description('Name of the user-assigned managed identity.')
param name string

param location string
param tags object = {}

resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: name
  location: location
  tags: tags
}

output id string = identity.id
output name string = identity.name
output clientId string = identity.properties.clientId
output principalId string = identity.properties.principalId
