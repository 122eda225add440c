// One Azure Container Registry: the gate's runner and the walkthrough's three registries.
// The admin user and anonymous pull stay off; callers authenticate with Entra ID.

@description('Registry name (5-50 letters and digits, globally unique).')
param name string

param location string
param tags object = {}

@allowed([
  'Basic'
  'Standard'
  'Premium'
])
param sku string = 'Basic'

@description('Give the registry a system-assigned identity (quick runs use it to read Key Vault and pull).')
param systemIdentity bool = false

resource registry 'Microsoft.ContainerRegistry/registries@2023-07-01' = {
  name: name
  location: location
  tags: tags
  sku: {
    name: sku
  }
  identity: systemIdentity ? { type: 'SystemAssigned' } : null
  properties: {
    adminUserEnabled: false
    anonymousPullEnabled: false
    publicNetworkAccess: 'Enabled'
  }
}

output id string = registry.id
output name string = registry.name
output loginServer string = registry.properties.loginServer
output principalId string = systemIdentity ? registry.identity.principalId : ''
