// A user-assigned managed identity: the gate's (the Function app runs as it) or the validation
// runner's (the gate attaches it to each validation taskRun). Every grant names the identity, not
// a system identity of the app or the registry, so the grants outlive a re-created app or registry
// and can be made before either exists.

@description('Name of the user-assigned managed identity.')
param name string

param location string
param tags object = {}

resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2024-11-30' = {
  name: name
  location: location
  tags: tags
}

output id string = identity.id
output name string = identity.name
output clientId string = identity.properties.clientId
output principalId string = identity.properties.principalId
