// The upstream registry's Event Grid system topic, deployed into that registry's resource group.
// Its system identity is what writes undeliverable events to the dead-letter container.
// A registry has at most one system topic: if yours already has one, pass its name.

@description('Name of the upstream registry (in this resource group).')
param registryName string

@description('Name of the system topic (an existing topic of this registry is reused by name).')
param topicName string

param tags object = {}

resource registry 'Microsoft.ContainerRegistry/registries@2025-11-01' existing = {
  name: registryName
}

resource topic 'Microsoft.EventGrid/systemTopics@2025-02-15' = {
  name: topicName
  location: registry.location
  tags: tags
  identity: {
    type: 'SystemAssigned'
  }
  properties: {
    source: registry.id
    topicType: 'Microsoft.ContainerRegistry.Registries'
  }
}

output name string = topic.name
output principalId string = topic.identity.principalId
